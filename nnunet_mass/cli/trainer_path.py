"""nnUNetv2_mass_trainer_path: print the line that exports nnUNet_extTrainer with our trainers."""
import argparse

from nnunet_mass.discovery import export_line, trainer_folder


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description="Print `export nnUNet_extTrainer=...` including the nnunet-mass trainer folder. "
                    "Only needed where Python skips .pth files (for example `python -S`): "
                    "eval \"$(nnUNetv2_mass_trainer_path)\"")
    parser.add_argument("--folder-only", action="store_true", help="print only the trainer folder")
    args = parser.parse_args(argv)
    print(trainer_folder() if args.folder_only else export_line())
