"""nnUNetv2_mass_pool_datasets: several raw datasets -> one pretraining dataset with body-mask labels."""
import argparse
import sys

from nnunet_mass.cli.arguments import add_raw_dataset_arguments


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description="Pool nnU-Net raw datasets, labeled or not, into $nnUNet_raw/DatasetXXX_NAME for pretraining "
                    "with one set of plans. Cases are renamed <SourceDatasetName>_<case>, checked and given a "
                    "computed body mask as label (as nnUNetv2_mass_prepare_unlabeled does); dataset.json maps each "
                    "case to its source (mass_case_sources). Labels of labeled sources are kept in masksTr/ for "
                    "nnUNetv2_mass_generate_masks --from-labels. The dataset appears only when complete.")
    parser.add_argument("-d", dest="sources", nargs="+", required=True, metavar="DATASET",
                        help="source dataset ids or names, e.g. -d 11 12 Dataset013_Liver")
    parser.add_argument("-o", dest="dataset_id", type=int, required=True, help="id of the pooled dataset (1-999)")
    parser.add_argument("-n", dest="name", required=True, help="name of the pooled dataset, e.g. PretrainPool")
    parser.add_argument("--include-test", dest="include_test", action="store_true",
                        help="also pool imagesTs (their labels are never used)")
    parser.add_argument("-cn", dest="channel_names", nargs="+", default=None, metavar="NAME",
                        help="pooled channel names, needed when the sources' names differ. nnU-Net normalises by "
                             "name: 'CT' -> CT normalisation (all sources must be CT in HU), any other name -> "
                             "per-scan z-score (e.g. -cn image for a CT+MR pool)")
    add_raw_dataset_arguments(parser)
    args = parser.parse_args(argv)

    from nnunet_mass.unlabeled import PreparationError  # after --help: imports SimpleITK
    from nnunet_mass.unlabeled.pool import pool_datasets

    try:
        pool_datasets(args.sources, args.dataset_id, args.name, args.channel_names, include_test=args.include_test,
                      overwrite=args.overwrite, num_processes=args.num_processes, min_body_ml=args.min_body_ml)
    except PreparationError as error:
        sys.exit(f"nnUNetv2_mass_pool_datasets: error: {error}")
