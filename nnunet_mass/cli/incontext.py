"""nnUNetv2_mass_incontext: few-shot in-context segmentation with a MASS pretraining, no training."""
import argparse
import sys

from nnunet_mass.cli.arguments import add_incontext_arguments, checked_device


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description="Segment query images with what reference masks show, using a MASS pretraining and no "
                    "training. Each label value of a reference mask is one task (thresholded sigmoid; where "
                    "tasks overlap the most probable wins); several references of one label are averaged. "
                    "Outputs are label maps <CASE><file_ending> in each query's geometry.")
    add_incontext_arguments(parser)
    parser.add_argument("-ref", dest="references", nargs=2, action="append", required=True,
                        metavar=("IMAGE", "MASK"),
                        help="a reference image and its label mask (same geometry); repeat for more references. "
                             "Multi-channel images: the channel files joined by commas, IMG_0000,IMG_0001 MASK")
    parser.add_argument("-i", dest="inputs", nargs="+", required=True,
                        help="a folder with nnU-Net naming (CASE_0000<file_ending>) or image files")
    parser.add_argument("-o", dest="output_folder", required=True, help="output folder")
    parser.add_argument("--labels", nargs="+", type=int, default=None,
                        help="segment only these label values [every label of the references]")
    parser.add_argument("--file_ending", default=None,
                        help="file ending of the inputs and outputs [the model's dataset.json file_ending]")
    parser.add_argument("--save_probabilities", action="store_true",
                        help="also write <CASE>.npz (probabilities, one channel per label, and labels) and <CASE>.pkl")
    args = parser.parse_args(argv)
    device = checked_device(parser, args)
    from nnunet_mass.downstream.cases import CaseNamingError
    from nnunet_mass.downstream.incontext import InContextInputError, InContextSegmenter
    from nnunet_mass.downstream.model import NotAPretrainingError, load_pretrained_model

    try:
        model = load_pretrained_model(args.model_folder, args.fold, args.checkpoint, device)
        segmenter = InContextSegmenter(model, device, args.step_size, args.largest_component)
        for images, mask in args.references:  # every label is encoded; --labels chooses at prediction
            segmenter.add_reference(images.split(","), mask)
        written = segmenter.predict_folder(args.inputs, args.output_folder, args.labels, args.save_probabilities,
                                           args.file_ending)
    except (InContextInputError, CaseNamingError, NotAPretrainingError, FileNotFoundError) as error:
        sys.exit(f"nnUNetv2_mass_incontext: error: {error}")
    print(f"{len(written)} case(s) segmented with labels {segmenter.labels if args.labels is None else args.labels} "
          f"into {args.output_folder}")
