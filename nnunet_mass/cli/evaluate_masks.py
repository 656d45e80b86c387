"""nnUNetv2_mass_evaluate_masks: ABO and recall of stored mask proposals against the ground truth."""
import argparse
import sys

from nnunet_mass.cli.arguments import add_preprocessed_dataset_arguments


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description="Score the mask proposals of a labelled preprocessed dataset: for every ground-truth label of "
                    "every case the best IoU of any proposal; prints the average best overlap (ABO) and recall at "
                    "an IoU per label (names from dataset.json), overall and per proposal source; writes JSON.")
    add_preprocessed_dataset_arguments(parser)
    parser.add_argument("-o", dest="output_file", default=None, help="JSON file [<mask folder>/qa/evaluation.json]")
    parser.add_argument("--cases", nargs="+", default=None, metavar="CASE",
                        help="only these cases [every case with finished masks]")
    parser.add_argument("--iou", dest="iou_threshold", type=float, default=0.5, help="IoU for recall [0.5]")
    parser.add_argument("--instances", action="store_true",
                        help="score each connected component of a label as its own structure (e.g. two kidneys)")
    parser.add_argument("--min_voxels", type=int, default=1,
                        help="with --instances: ignore components smaller than this [1]")
    args = parser.parse_args(argv)
    if not 0 < args.iou_threshold <= 1:
        parser.error("--iou must be in (0, 1]")

    from nnunet_mass.masks.dataset_masks import CaseInputError, MaskGenerationError
    from nnunet_mass.masks.evaluate import evaluate_dataset_masks
    from nnunet_mass.masks.inspect import MaskQAError
    from nnunet_mass.masks.store import MaskFormatError

    try:
        evaluate_dataset_masks(args.dataset, args.configuration, args.plans, args.output_file, args.cases,
                               args.iou_threshold, args.instances, args.min_voxels)
    except (MaskQAError, MaskGenerationError, CaseInputError, MaskFormatError, FileNotFoundError) as error:
        sys.exit(f"nnUNetv2_mass_evaluate_masks: error: {error}")
