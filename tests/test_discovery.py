import os
import subprocess
import sys

from nnunet_mass.discovery import ENV_VAR, export_line, trainer_folder, with_trainer_folder


def test_trainer_folder_holds_the_trainers():
    assert (trainer_folder() / "nnUNetTrainerMASSFinetune.py").is_file()


def test_user_value_is_kept_first_and_ours_added_once():
    ours = str(trainer_folder())
    value = with_trainer_folder(f"/my/trainers{os.pathsep}/other")
    assert value.split(os.pathsep) == ["/my/trainers", "/other", ours]
    assert with_trainer_folder(value) == value
    assert with_trainer_folder(None) == ours
    assert with_trainer_folder("") == ours


def test_export_line_can_be_evaluated_by_a_shell():
    line = export_line({ENV_VAR: "/my/trainers"})
    out = subprocess.run(["bash", "-c", f"{line}; printf %s \"${ENV_VAR}\""], capture_output=True, text=True,
                         check=True).stdout
    assert out == f"/my/trainers{os.pathsep}{trainer_folder()}"


def _child_env(**extra):
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    env.update(extra)
    return env


FIND = ("from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as find;"
        "cls = find('nnUNetTrainerMASSFinetune');"
        "import os; print(cls.__name__); print(os.environ['nnUNet_extTrainer'])")


def test_a_fresh_interpreter_finds_our_trainer_without_any_export():
    result = subprocess.run([sys.executable, "-c", FIND], env=_child_env(), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[-2] == "nnUNetTrainerMASSFinetune"
    assert lines[-1] == str(trainer_folder())


def test_a_users_own_trainer_folder_survives_interpreter_start(tmp_path):
    result = subprocess.run([sys.executable, "-c", FIND], env=_child_env(**{ENV_VAR: str(tmp_path)}),
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == f"{tmp_path}{os.pathsep}{trainer_folder()}"


def test_trainer_path_command_prints_the_export_line():
    result = subprocess.run([os.path.join(os.path.dirname(sys.executable), "nnUNetv2_mass_trainer_path")],
                            env=_child_env(), capture_output=True, text=True, check=True)
    assert result.stdout.strip() == f'export {ENV_VAR}="{trainer_folder()}"'
