"""nnUNetv2_mass_make_phantoms: write a synthetic CT or MR phantom dataset in nnU-Net raw format."""
import argparse
import os


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Write Dataset<id>_<name> of synthetic abdominal phantoms "
                                                 "(liver, kidneys, spleen, vessel, vertebrae, lesions) into "
                                                 "nnUNet_raw or --raw_root.")
    parser.add_argument("-d", type=int, required=True, help="dataset id (1-999)")
    parser.add_argument("-n", "--num_cases", type=int, default=10, help="number of cases [10]")
    parser.add_argument("--name", default=None, help="dataset name [Phantom<modality>]")
    parser.add_argument("-m", "--modality", choices=["CT", "MR"], default="CT", help="[CT]")
    parser.add_argument("--seed", type=int, default=0, help="case i depends only on (seed, i) [0]")
    parser.add_argument("--shape", type=int, nargs=3, default=(64, 64, 64), metavar=("Z", "Y", "X"),
                        help="voxels per axis [64 64 64]")
    parser.add_argument("--spacing", type=float, nargs=3, default=(2.5, 2.0, 2.0), metavar=("Z", "Y", "X"),
                        help="voxel size in mm [2.5 2.0 2.0]")
    parser.add_argument("--case_prefix", default="phantom", help="case identifiers are <prefix>_<index> [phantom]")
    parser.add_argument("--unlabeled", action="store_true",
                        help="write an unlabeled pool (no labelsTr) for pretraining")
    parser.add_argument("--raw_root", default=None, help="target folder [$nnUNet_raw]")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset with the same id")
    args = parser.parse_args(argv)

    raw_root = args.raw_root or os.environ.get("nnUNet_raw")
    if not raw_root:
        parser.error("set nnUNet_raw or pass --raw_root")

    from nnunet_mass.phantoms import write_phantom_dataset

    try:
        folder = write_phantom_dataset(raw_root, args.d, args.name or f"Phantom{args.modality}", args.num_cases,
                                       seed=args.seed, modality=args.modality, labeled=not args.unlabeled,
                                       shape=args.shape, spacing=args.spacing, case_prefix=args.case_prefix,
                                       overwrite=args.overwrite)
    except ValueError as error:
        parser.error(str(error))
    print(f"Wrote {args.num_cases} {args.modality} phantoms to {folder}")
