"""nnUNetv2_mass_probe: fit a classifier on frozen-encoder features (fit), or apply one (predict)."""
import argparse
import sys


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Classification probes on features of "
                                                 "nnUNetv2_mass_extract_features.")
    commands = parser.add_subparsers(dest="command", required=True)
    fit = commands.add_parser("fit", help="cross-validate, then fit on every labelled case and save")
    fit.add_argument("--features", required=True, help="features .npz")
    fit.add_argument("--labels", required=True,
                     help="CSV with a header and the columns case,label (case = image name without _0000<ending>)")
    fit.add_argument("-o", dest="output", required=True, help="probe file to write (.joblib or .pkl)")
    fit.add_argument("--head", choices=("logistic", "attention"), default="logistic",
                     help="logistic regression on pooled features, or attention pooling over tokens "
                          "(needs --tokens features) [logistic]")
    fit.add_argument("--folds", type=int, default=5, help="stratified cross-validation folds, 0 to skip [5]")
    fit.add_argument("--seed", type=int, default=0, help="fold shuffling and head initialisation [0]")
    apply = commands.add_parser("predict", help="predict classes of the cases of a features file")
    apply.add_argument("--probe", required=True, help="probe file of nnUNetv2_mass_probe fit")
    apply.add_argument("--features", required=True, help="features .npz (same model and settings as for fit)")
    apply.add_argument("-o", dest="output", required=True,
                       help="CSV to write: case,label,probability_<class>... (label = predicted class)")
    return parser


def main(argv=None) -> None:
    args = _parser().parse_args(argv)
    from nnunet_mass.downstream import probe as probes
    from nnunet_mass.downstream.features import load_features

    try:
        features = load_features(args.features)
        if args.command == "fit":
            fitted = probes.fit_probe(features, probes.read_labels(args.labels), args.head, args.folds, args.seed,
                                      args.features, args.labels)
            path = probes.save_probe(args.output, fitted)
        else:
            fitted = probes.load_probe(args.probe)
            path = probes.write_predictions(args.output, fitted,
                                            *probes.predict(fitted, features, args.features, args.probe))
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f"nnUNetv2_mass_probe {args.command}: error: {error}")
    if args.command == "fit":
        if fitted["cross_validation"]:
            print(f"Cross-validation of the {args.head} head on {fitted['num_cases']} cases:")
            print(probes.format_report(fitted["cross_validation"]))
        print(f"Fitted on all {fitted['num_cases']} cases, classes {fitted['classes']}: wrote {path}")
    else:
        print(f"Wrote predictions of {len(features.cases)} case(s) to {path}")
