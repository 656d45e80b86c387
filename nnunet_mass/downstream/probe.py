"""Classification probes on frozen-encoder features: fit with cross-validation, save, predict.

Labels come from a CSV with a header and (at least) the columns `case,label`: `case` as
in the features file (nnU-Net's case identifier, the image name without `_0000.nii.gz`),
`label` any class name. Cases of the features file that the CSV does not name are ignored.

Heads:
- `logistic` (default): standardised pooled features, scikit-learn's logistic regression
  with balanced class weights;
- `attention`: MASS's classifier (DESIGN 1.5) on the deepest stage's tokens: gated
  attention pooling, a linear layer, class-weighted cross-entropy (needs `--tokens` features).

Fitting first cross-validates (stratified k-fold: AUROC, one-vs-rest for more than two
classes, balanced accuracy, macro F1; mean and standard deviation over folds), then fits
on all labelled cases. A probe file is a joblib pickle: load only probes you trust.
"""
import csv
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import torch
from torch import nn

from nnunet_mass.downstream.features import CaseFeatures

HEADS = ("logistic", "attention")
METRICS = ("auroc", "balanced_accuracy", "f1_macro")
PROBE_FORMAT = 1
_SHOWN = 5  # how many offending case names an error lists


class ProbeError(ValueError):
    pass


def read_labels(csv_path) -> Dict[str, str]:
    """{case: label} from a `case,label` CSV; errors name the file and what is wrong in it."""
    path = Path(csv_path)
    if not path.is_file():
        raise FileNotFoundError(f"No labels file {path}")
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in reader.fieldnames or []]
        if not {"case", "label"} <= set(columns):
            raise ProbeError(f"{path} needs a header with the columns case,label; found {columns or 'no header'}")
        reader.fieldnames = columns
        labels = {}
        for line, row in enumerate(reader, start=2):
            case, label = (row["case"] or "").strip(), (row["label"] or "").strip()
            if not case or not label:
                raise ProbeError(f"{path}, line {line}: empty case or label")
            if labels.setdefault(case, label) != label:
                raise ProbeError(f"{path}, line {line}: case {case} has two labels ({labels[case]}, {label})")
    if not labels:
        raise ProbeError(f"{path} names no cases")
    return labels


def labelled_cases(features: CaseFeatures, labels: Dict[str, str], csv_path, features_path) -> tuple:
    """(row indices into the features, label per row) of the labelled cases; refuses unknown cases
    and a single class."""
    rows = {case: i for i, case in enumerate(features.cases)}
    unknown = sorted(set(labels) - set(rows))
    if unknown:
        raise ProbeError(f"{csv_path} names {len(unknown)} case(s) that {features_path} does not hold: "
                         f"{', '.join(unknown[:_SHOWN])}{' ...' if len(unknown) > _SHOWN else ''} "
                         f"(it holds e.g. {', '.join(features.cases[:3])})")
    classes = sorted(set(labels.values()))
    if len(classes) < 2:
        raise ProbeError(f"{csv_path} has a single class ({classes[0]}); a classifier needs at least two")
    cases = sorted(labels)
    return np.array([rows[c] for c in cases]), np.array([labels[c] for c in cases])


def head_inputs(kind: str, features: CaseFeatures, features_path):
    """What a head reads: the pooled matrix (logistic) or the per-case token arrays (attention)."""
    if kind not in HEADS:
        raise ProbeError(f"head must be one of {HEADS}, got {kind!r}")
    if kind == "logistic":
        return features.features
    if features.tokens is None:
        raise ProbeError(f"{features_path} holds no tokens: the attention head needs features extracted with "
                         "nnUNetv2_mass_extract_features --tokens")
    return features.tokens


def take(inputs, rows: Sequence[int]):
    return inputs[rows] if isinstance(inputs, np.ndarray) else [inputs[i] for i in rows]


class LogisticHead:
    """Standardised features, balanced-class-weight logistic regression (scikit-learn)."""

    def __init__(self, seed: int = 0, C: float = 1.0):
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        self.model = make_pipeline(StandardScaler(), LogisticRegression(C=C, class_weight="balanced",
                                                                        max_iter=5000, random_state=seed))

    def fit(self, inputs: np.ndarray, y: np.ndarray, num_classes: int) -> "LogisticHead":
        if len(np.unique(y)) != num_classes:
            raise ProbeError("every class needs at least one training case")
        self.model.fit(inputs, y)
        return self

    def predict_proba(self, inputs: np.ndarray) -> np.ndarray:
        return self.model.predict_proba(inputs)


class AttentionPooling(nn.Module):
    """Gated attention pooling over tokens, then a linear classifier."""

    def __init__(self, channels: int, num_classes: int, hidden: int = 64):
        super().__init__()
        self.value = nn.Sequential(nn.Linear(channels, hidden), nn.Tanh())
        self.gate = nn.Sequential(nn.Linear(channels, hidden), nn.Sigmoid())
        self.score = nn.Linear(hidden, 1)
        self.classify = nn.Linear(channels, num_classes)

    def forward(self, tokens: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """tokens (B, N, C), valid (B, N) bool -> logits (B, classes)"""
        scores = self.score(self.value(tokens) * self.gate(tokens)).squeeze(-1)  # (B, N)
        weights = scores.masked_fill(~valid, float("-inf")).softmax(1)
        return self.classify(torch.einsum("bn,bnc->bc", weights, tokens))


class AttentionHead:
    """`AttentionPooling` trained with AdamW and class-weighted cross-entropy on standardised tokens."""

    def __init__(self, seed: int = 0, epochs: int = 100, lr: float = 3e-3, weight_decay: float = 1e-2,
                 batch_size: int = 8, hidden: int = 64):
        self.seed, self.epochs, self.lr, self.weight_decay = seed, epochs, lr, weight_decay
        self.batch_size, self.hidden = batch_size, hidden
        self.network, self.mean, self.std = None, None, None

    def fit(self, inputs: List[np.ndarray], y: np.ndarray, num_classes: int) -> "AttentionHead":
        flat = np.concatenate(inputs)
        self.mean, self.std = flat.mean(0), flat.std(0) + 1e-6
        counts = np.bincount(y, minlength=num_classes)
        if (counts == 0).any():
            raise ProbeError("every class needs at least one training case")
        weights = torch.tensor(len(y) / (num_classes * counts), dtype=torch.float32)  # "balanced", as scikit-learn
        with torch.random.fork_rng(devices=[]):  # seeded without touching the caller's generator
            torch.manual_seed(self.seed)
            self.network = AttentionPooling(flat.shape[1], num_classes, self.hidden)
            self._train(inputs, torch.as_tensor(y), weights)
        return self

    def _train(self, inputs, y: torch.Tensor, class_weights: torch.Tensor) -> None:
        optimizer = torch.optim.AdamW(self.network.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        loss_fn = nn.CrossEntropyLoss(weight=class_weights)
        self.network.train()
        for _ in range(self.epochs):
            for batch in torch.randperm(len(y)).split(self.batch_size):
                tokens, valid = self._batch([inputs[i] for i in batch])
                optimizer.zero_grad()
                loss_fn(self.network(tokens, valid), y[batch]).backward()
                optimizer.step()
        self.network.eval()

    def _batch(self, inputs: List[np.ndarray]) -> tuple:
        """Standardised tokens zero-padded to (B, N_max, C) and the (B, N_max) mask of real ones."""
        longest = max(len(t) for t in inputs)
        tokens = np.zeros((len(inputs), longest, len(self.mean)), dtype=np.float32)
        valid = np.zeros((len(inputs), longest), dtype=bool)
        for i, t in enumerate(inputs):
            tokens[i, :len(t)], valid[i, :len(t)] = (t - self.mean) / self.std, True
        return torch.from_numpy(tokens), torch.from_numpy(valid)

    @torch.no_grad()
    def predict_proba(self, inputs: List[np.ndarray]) -> np.ndarray:
        rows = [self.network(*self._batch(inputs[i:i + self.batch_size])).softmax(1)
                for i in range(0, len(inputs), self.batch_size)]
        return torch.cat(rows).numpy()


def make_head(kind: str, seed: int = 0):
    return {"logistic": LogisticHead, "attention": AttentionHead}[kind](seed=seed)


def classification_metrics(y: np.ndarray, proba: np.ndarray) -> Dict[str, float]:
    """AUROC (one-vs-rest macro for > 2 classes), balanced accuracy, macro F1; y are class indices."""
    from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score

    num_classes = proba.shape[1]
    predicted = proba.argmax(1)
    if num_classes == 2:
        auroc = roc_auc_score(y, proba[:, 1])
    else:
        auroc = roc_auc_score(y, proba, multi_class="ovr", labels=list(range(num_classes)))
    return {"auroc": float(auroc), "balanced_accuracy": float(balanced_accuracy_score(y, predicted)),
            "f1_macro": float(f1_score(y, predicted, average="macro", labels=list(range(num_classes))))}


def check_folds(y: np.ndarray, classes: Sequence[str], folds: int, csv_path) -> None:
    """Stratified k-fold needs every class in every test fold."""
    counts = np.bincount(y, minlength=len(classes))
    smallest = int(counts.argmin())
    if folds < 2 or counts[smallest] < folds:
        raise ProbeError(f"{csv_path}: class {classes[smallest]} has {counts[smallest]} case(s), too few for "
                         f"{folds}-fold cross-validation; use --folds between 2 and {counts[smallest]} "
                         "(or --folds 0 to skip cross-validation)")


def cross_validate(kind: str, inputs, y: np.ndarray, folds: int, seed: int = 0) -> Dict[str, dict]:
    """Per metric: mean, std and per-fold values of a stratified, shuffled k-fold cross-validation."""
    from sklearn.model_selection import StratifiedKFold

    num_classes = int(y.max()) + 1
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    per_fold = []
    for train, test in splitter.split(np.zeros((len(y), 1)), y):
        head = make_head(kind, seed).fit(take(inputs, train), y[train], num_classes)
        per_fold.append(classification_metrics(y[test], head.predict_proba(take(inputs, test))))
    return {m: {"mean": float(np.mean([f[m] for f in per_fold])), "std": float(np.std([f[m] for f in per_fold])),
                "folds": [f[m] for f in per_fold]} for m in METRICS}


def fit_probe(features: CaseFeatures, labels: Dict[str, str], kind: str = "logistic", folds: int = 5,
              seed: int = 0, features_path="features", csv_path="labels") -> dict:
    """Cross-validate (unless folds == 0), then fit on every labelled case; returns the probe dict."""
    inputs = head_inputs(kind, features, features_path)
    rows, names = labelled_cases(features, labels, csv_path, features_path)
    classes = sorted({str(n) for n in names})
    y = np.searchsorted(classes, names)  # class indices, in sorted class-name order
    inputs = take(inputs, rows)
    report = None
    if folds:
        check_folds(y, classes, folds, csv_path)
        report = cross_validate(kind, inputs, y, folds, seed)
    head = make_head(kind, seed).fit(inputs, y, len(classes))
    return {"format_version": PROBE_FORMAT, "head": kind, "estimator": head, "classes": classes,
            "feature_dim": int(features.features.shape[1]), "feature_metadata": features.metadata,
            "cross_validation": report, "num_cases": len(y), "folds": folds, "seed": seed,
            "labels_file": str(csv_path), "features_file": str(features_path)}


def save_probe(path, probe: dict) -> Path:
    import joblib

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(probe, path)
    return path


def load_probe(path) -> dict:
    import joblib

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No probe file {path}")
    probe = joblib.load(path)
    if not isinstance(probe, dict) or probe.get("format_version") != PROBE_FORMAT:
        raise ProbeError(f"{path} is not a probe written by nnUNetv2_mass_probe fit")
    return probe


def check_compatible(probe: dict, features: CaseFeatures, features_path, probe_path) -> None:
    """Refuse features of another encoder, pooling or width than the probe was fitted on."""
    trained = probe["feature_metadata"]
    if trained.get("encoder_id") != features.model_id:
        raise ProbeError(f"{features_path} was extracted with another encoder ({features.model_id}, from "
                         f"{features.metadata.get('checkpoint')}) than {probe_path} was fitted on "
                         f"({trained.get('encoder_id')}, from {trained.get('checkpoint')}); re-extract with that model")
    for setting in ("stages", "step_size"):
        if trained.get(setting) != features.metadata.get(setting):
            raise ProbeError(f"{features_path} was extracted with {setting}={features.metadata.get(setting)}, "
                             f"{probe_path} was fitted on {setting}={trained.get(setting)}")
    if features.features.shape[1] != probe["feature_dim"]:
        raise ProbeError(f"{features_path} has {features.features.shape[1]} features per case, {probe_path} "
                         f"expects {probe['feature_dim']}")


def predict(probe: dict, features: CaseFeatures, features_path="features", probe_path="probe") -> tuple:
    """(cases, predicted class names, probabilities (cases, classes))."""
    check_compatible(probe, features, features_path, probe_path)
    proba = probe["estimator"].predict_proba(head_inputs(probe["head"], features, features_path))
    return features.cases, [probe["classes"][i] for i in proba.argmax(1)], proba


def write_predictions(path, probe: dict, cases: Sequence[str], predicted: Sequence[str], proba: np.ndarray) -> Path:
    """CSV `case,label,probability_<class>...`: `label` is the predicted class."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["case", "label", *(f"probability_{c}" for c in probe["classes"])])
        for case, label, row in zip(cases, predicted, proba):
            writer.writerow([case, label, *(f"{p:.6f}" for p in row)])
    return path


def format_report(report: Dict[str, dict]) -> str:
    """One line per metric: mean ± std over folds."""
    folds = len(next(iter(report.values()))["folds"])
    return "\n".join(f"  {m:<18} {report[m]['mean']:.3f} ± {report[m]['std']:.3f}  ({folds} folds)" for m in METRICS)
