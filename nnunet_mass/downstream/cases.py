"""Input images grouped into cases, for the commands that take raw images (in-context
segmentation, feature extraction).

A folder follows nnU-Net's naming (CASE_0000<file_ending>, CASE_0001..., one file per
channel). Explicit files are grouped the same way where they are so named; any other file
is a one-channel case named after the file.
"""
import re
from pathlib import Path
from typing import Dict, List, Sequence, Union

PathLike = Union[str, Path]


class CaseNamingError(ValueError):
    """Image files that do not form cases of the model's channel count."""


def as_file_list(files: Union[PathLike, Sequence[PathLike]]) -> List[str]:
    """One file or several (the channels of one case) as a list of strings."""
    if isinstance(files, (str, Path)):
        return [str(files)]
    return [str(f) for f in files]


def image_cases(inputs: Union[PathLike, Sequence[PathLike]], file_ending: str, num_channels: int) -> Dict[str, List[str]]:
    """{case: [channel files, sorted]} of a folder or of files; ValueError where a case has not
    `num_channels` files (CaseNamingError), FileNotFoundError where there is nothing to read."""
    inputs = as_file_list(inputs)
    if len(inputs) == 1 and Path(inputs[0]).is_dir():
        inputs = _folder_images(Path(inputs[0]), file_ending)
    missing = [file for file in inputs if not Path(file).is_file()]
    if missing:
        raise FileNotFoundError(f"no such image file or folder: {', '.join(missing)}")
    channel_name = re.compile(r"(.+)_\d{4}" + re.escape(file_ending))
    cases: Dict[str, List[str]] = {}
    for file in inputs:
        name = Path(file).name
        match = channel_name.fullmatch(name)
        cases.setdefault(match.group(1) if match else _strip_ending(name, file_ending), []).append(file)
    for case, files in cases.items():
        if len(files) != num_channels:
            raise CaseNamingError(f"case {case} has {len(files)} image file(s) ({', '.join(files)}); the model "
                                  f"expects {num_channels} channel(s) named {case}_0000{file_ending}, ...")
    return {case: sorted(files) for case, files in sorted(cases.items())}


def _folder_images(folder: Path, file_ending: str) -> List[str]:
    images = sorted(str(p) for p in folder.iterdir() if p.name.endswith(file_ending))
    if not images:
        raise FileNotFoundError(f"{folder} holds no images named CASE_0000{file_ending} (the model's file ending)")
    return images


def _strip_ending(name: str, file_ending: str) -> str:
    if name.endswith(file_ending):
        return name[:-len(file_ending)]
    return name.split(".")[0]
