"""nnUNetv2_mass_prepare_unlabeled: unlabeled scans -> nnU-Net raw dataset with body-mask labels."""
import argparse
import sys

from nnunet_mass.cli.arguments import add_raw_dataset_arguments


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description="Write a folder of unlabeled images (.nii/.nii.gz/.nrrd/.nhdr/.mha/.mhd, files named "
                    "<case>_<XXXX>.<ext>, or <case>.<ext> with one channel) as "
                    "$nnUNet_raw/DatasetXXX_NAME. labelsTr holds computed body masks, so that "
                    "nnUNetv2_plan_and_preprocess accepts the dataset. Invalid cases are skipped with a reason.")
    parser.add_argument("-i", dest="input_folder", required=True, help="folder with the images")
    parser.add_argument("-d", dest="dataset_id", type=int, required=True, help="dataset id (1-999)")
    parser.add_argument("-n", dest="name", required=True, help="dataset name, e.g. UnlabeledCT")
    parser.add_argument("-cn", dest="channel_names", nargs="+", required=True, metavar="NAME",
                        help="one name per channel, in channel-index order, e.g. -cn CT or -cn T1 T2. "
                             "Names containing 'CT' are thresholded in HU, others with Otsu")
    add_raw_dataset_arguments(parser)
    args = parser.parse_args(argv)

    from nnunet_mass.unlabeled import PreparationError, prepare_unlabeled_dataset  # after --help: imports SimpleITK
    try:
        prepare_unlabeled_dataset(args.input_folder, args.dataset_id, args.name, args.channel_names,
                                  overwrite=args.overwrite, num_processes=args.num_processes,
                                  min_body_ml=args.min_body_ml)
    except PreparationError as error:
        sys.exit(f"nnUNetv2_mass_prepare_unlabeled: error: {error}")
