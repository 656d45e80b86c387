"""nnUNetv2_mass_extract_features: pooled frozen-encoder features of a folder of images."""
import argparse
import sys

from nnunet_mass.cli.arguments import add_pretrained_model_arguments


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description="Run the frozen encoder of a MASS pretraining over every image of a folder (nnU-Net naming: "
                    "CASE_0000<file ending>, one file per channel) and write the pooled features to an .npz "
                    "for nnUNetv2_mass_probe. Images are preprocessed with the model's plans and tiled like "
                    "nnUNetv2_predict.")
    add_pretrained_model_arguments(parser)
    parser.add_argument("-i", dest="input_folder", required=True, help="folder of images")
    parser.add_argument("-o", dest="output", required=True, help="features file to write, e.g. features.npz")
    parser.add_argument("--stages", choices=("deepest", "all"), default="deepest",
                        help="average the bottleneck only, or concatenate every stage's average [deepest]")
    parser.add_argument("--tokens", action="store_true",
                        help="also keep the bottleneck's tokens (needed by nnUNetv2_mass_probe --head attention)")
    parser.add_argument("-step_size", type=float, default=0.5, help="tile step, fraction of the patch size [0.5]")
    parser.add_argument("-b", dest="batch_size", type=int, default=4, help="tiles per encoder call [4]")
    parser.add_argument("-device", default=None, choices=("cuda", "cpu", "mps"),
                        help="[cuda if available, else cpu]")
    args = parser.parse_args(argv)

    import torch

    from nnunet_mass.downstream.cases import image_cases
    from nnunet_mass.downstream.features import PoolingSettings, extract_features, save_features
    from nnunet_mass.downstream.model import NotAPretrainingError, load_pretrained_model

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    try:
        settings = PoolingSettings(args.stages, args.tokens, args.step_size, args.batch_size)
        model = load_pretrained_model(args.model_folder, args.fold, args.checkpoint, device)
        cases = image_cases(args.input_folder, model.dataset_json["file_ending"], model.num_input_channels)
    except (NotAPretrainingError, FileNotFoundError, ValueError) as error:
        sys.exit(f"nnUNetv2_mass_extract_features: error: {error}")
    features = extract_features(model, cases, settings, device)
    path = save_features(args.output, features)
    print(f"Wrote features of {len(features.cases)} case(s), {features.features.shape[1]} per case, to {path}")
