"""nnUNetv2_mass_generate_masks: class-agnostic mask proposals for a preprocessed dataset."""
import argparse
import importlib
import sys

from nnunet_mass.cli.arguments import add_preprocessed_dataset_arguments


def _classical():
    """The classical generator module, or None where it is not installed."""
    try:
        classical = importlib.import_module("nnunet_mass.masks.classical")
    except ModuleNotFoundError as error:
        if error.name != "nnunet_mass.masks.classical":
            raise
        return None
    return classical


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description="Make class-agnostic masks for every case of an nnU-Net-preprocessed dataset (run "
                    "nnUNetv2_plan_and_preprocess first) and store them beside nnU-Net's data in "
                    "<nnUNet_preprocessed>/<dataset>/<data_identifier>_mass_masks. Finished cases are skipped, "
                    "so an interrupted run resumes. Exits non-zero if any case failed.")
    add_preprocessed_dataset_arguments(parser)
    parser.add_argument("-np", dest="num_processes", type=int, default=1,
                        help="number of processes (cases in parallel) [1]")
    parser.add_argument("--overwrite", action="store_true", help="regenerate cases that are already finished")
    parser.add_argument("--from-labels", dest="from_labels", default=None, metavar="DIR",
                        help="also import label maps <case>.<ending> from DIR (raw image grid, any nnU-Net-"
                             "readable ending); one mask per non-zero label value")
    parser.add_argument("--labels-only", dest="labels_only", action="store_true",
                        help="with --from-labels: store only the imported masks, no generated ones")
    parser.add_argument("--backend", choices=("classical", "sam2"), default="classical",
                        help="mask generator: classical (CPU, no weights) or sam2 (needs the sam2 package, a SAM2 "
                             "checkpoint and, for useful speed, a CUDA GPU; use -np 1) [classical]")
    from nnunet_mass.masks import sam2_backend

    sam2_backend.add_sam2_arguments(parser)
    classical = _classical()
    if classical is not None and hasattr(classical, "add_settings_arguments"):
        classical.add_settings_arguments(parser)
    args = parser.parse_args(argv)
    if args.labels_only and args.from_labels is None:
        parser.error("--labels-only needs --from-labels DIR")

    generator, settings = None, None
    if args.backend == "sam2":
        generator, settings = _sam2_generator(parser, args, sam2_backend)
    elif classical is not None and hasattr(classical, "settings_from_args") and not args.labels_only:
        settings = classical.settings_from_args(args)

    from nnunet_mass.masks.dataset_masks import MaskGenerationError, generate_dataset_masks

    try:
        report = generate_dataset_masks(args.dataset, args.configuration, args.plans, args.num_processes,
                                        overwrite=args.overwrite, generator=generator, settings=settings,
                                        from_labels=args.from_labels, mix_generated=not args.labels_only)
    except MaskGenerationError as error:
        sys.exit(f"nnUNetv2_mass_generate_masks: error: {error}")
    if not report.ok:
        sys.exit(f"nnUNetv2_mass_generate_masks: {len(report.failed)} case(s) failed (see above)")


def _sam2_generator(parser, args, sam2_backend):
    """(propose_masks_sam2, Sam2Settings); argparse errors for what is missing, before any work."""
    if args.labels_only:
        parser.error("--labels-only stores no generated masks: drop --backend sam2")
    if not args.sam2_checkpoint:
        parser.error("--backend sam2 needs --sam2-checkpoint PT: " + sam2_backend.CHECKPOINT_HINT)
    settings = sam2_backend.sam2_settings_from_args(args)
    try:
        sam2_backend.check_sam2_ready(settings)
    except (FileNotFoundError, ValueError, ImportError) as error:
        parser.error(str(error))
    return sam2_backend.propose_masks_sam2, settings
