"""MASSPretrainTrainer: nnU-Net's trainer loop driven by the MASS in-context pretext.

What changes against nnUNetTrainer, hook by hook:
- network: the plans network inside an InContextNetwork (same encoder/decoder keys);
- data: MASSPretextDataLoader episodes (reference, query, K masks) in nnU-Net's augmenter workers;
- loss: soft Dice + BCE over the valid task channels;
- optimiser: AdamW (LAMB in a variant), warm-up + cosine stepped per iteration, gradient
  clipping, bf16 autocast on CUDA, and an EMA of the weights after every step;
- validation: in-context Dice of the EMA on the validation cases' masks, logged as nnU-Net's
  pseudo Dice (so progress.png and checkpoint_best follow it);
- checkpoints: `network_weights` is the EMA on CPU (what fine-tuning loads), the raw
  weights are kept for `--c`; written atomically;
- perform_actual_validation: a fixed-seed in-context evaluation instead of sliding-window
  segmentation, which a pretext network cannot do.
"""
import os
from dataclasses import asdict, replace

import numpy as np
import torch
from torch import distributed as dist
from torch.nn.utils import clip_grad_norm_

from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA

from nnunet_mass import __version__
from nnunet_mass.masks.store import mask_folder
from nnunet_mass.networks.unwrap import unwrap
from nnunet_mass.training import checkpoints
from nnunet_mass.training.ema import build_ema, ema_state_on_cpu, restore_ema, update_ema
from nnunet_mass.training.incontext_eval import scored_task_dice
from nnunet_mass.training.losses import InContextLoss
from nnunet_mass.training.schedules import WarmupCosineLRScheduler
from nnunet_mass.training.settings import apply_environment_overrides
from nnunet_mass.training.transfer import plain_state


VALIDATION_SEED = 2026


class NonFiniteLossError(FloatingPointError):
    pass


class MASSPretrainTrainer(nnUNetTrainer):
    # Attributes a user may set with nnUNet_MASS_<name>=<value> (see README, "Pretraining settings").
    tunable = {"num_epochs": int, "num_iterations_per_epoch": int, "num_val_iterations_per_epoch": int,
               "initial_lr": float, "weight_decay": float, "warmup_fraction": float, "ema_decay": float,
               "num_masks": int, "crop_size": tuple, "augmentation_scale": float, "mask_size_bias": float}
    optimizer_name = "adamw"  # or "lamb" (timm's LAMB, as MASS)
    peak_lr = 1e-3  # default of initial_lr: the peak of the warm-up + cosine schedule
    # Masks drawn with weights voxels ** bias. MASS draws uniformly (0), but its SAM masks are
    # whole structures; classical proposals are mostly fragments, and on held-out phantoms 0.5
    # lifted the in-context Dice of anatomical labels from 0.31 to 0.58 (benchmarks/bench_pretext_learning.py).
    mask_size_bias = 0.5

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        # MASS trains 100k iterations; here 400 nnU-Net epochs of 250 iterations, validated every epoch.
        self.num_epochs = 400
        self.num_val_iterations_per_epoch = 25
        self.initial_lr = self.peak_lr
        self.final_lr = 1e-7
        self.weight_decay = 1e-2
        self.warmup_fraction = 0.05
        self.grad_clip = 1.0
        self.ema_decay = 0.99
        self.num_masks = 13
        self.crop_size = None  # None: the plans' patch size
        self.augmentation_scale = 1.0  # multiplies every augmentation probability
        self.enable_deep_supervision = False
        self.save_every = 1  # epochs are long; a crash loses at most one
        self.grad_scaler = None  # bf16 autocast needs no loss scaling
        self.ema = None
        self._iteration_in_epoch = 0
        overrides = apply_environment_overrides(self, self.tunable)
        if overrides:
            self.print_to_log_file(f"Settings from the environment: {overrides}")

    # --- network, loss, optimiser -------------------------------------------------------------
    @staticmethod
    def build_network_architecture(plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True):
        from nnunet_mass.networks.incontext import build_incontext_network

        return build_incontext_network(plans_manager, configuration_manager, num_input_channels)

    def initialize(self):
        super().initialize()
        self.ema = build_ema(unwrap(self.network), self.ema_decay)

    def _do_i_compile(self) -> bool:
        # Off unless asked for: the in-context network has not been validated under torch.compile.
        return os.environ.get("nnUNet_compile", "false").lower() in ("true", "1", "t")

    def _build_loss(self):
        return InContextLoss()

    def configure_optimizers(self):
        decay, no_decay = [], []
        for parameter in self.network.parameters():
            (no_decay if parameter.ndim <= 1 else decay).append(parameter)  # norms and biases are not shrunk
        groups = [{"params": decay, "weight_decay": self.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        optimizer = self._optimizer_class()(groups, lr=self.initial_lr)
        scheduler = WarmupCosineLRScheduler(optimizer, self.initial_lr, self.num_iterations_per_epoch,
                                            self.num_epochs, self.warmup_fraction, self.final_lr)
        return optimizer, scheduler

    def _optimizer_class(self):
        if self.optimizer_name == "lamb":
            from timm.optim import Lamb  # timm comes with nnunetv2

            return Lamb
        return torch.optim.AdamW

    # --- data ---------------------------------------------------------------------------------
    def pretext_settings(self):
        from nnunet_mass.pretext.settings import PretextSettings

        settings = PretextSettings(num_masks=self.num_masks, mask_size_bias=self.mask_size_bias)
        return replace(settings, weak=settings.weak.scaled(self.augmentation_scale),
                       strong=settings.strong.scaled(self.augmentation_scale))

    def crop_shape(self) -> tuple:
        crop = tuple(int(c) for c in (self.crop_size or self.configuration_manager.patch_size))
        strides = self.configuration_manager.network_arch_init_kwargs.get("strides")
        divisor = np.prod(np.array(strides), axis=0) if strides else np.ones(len(crop), dtype=int)
        if len(crop) != len(divisor) or any(c % d for c, d in zip(crop, divisor)):
            raise ValueError(f"crop size {list(crop)} must have {len(divisor)} axes, each divisible by the "
                             f"network's total stride {divisor.tolist()} (nnUNet_MASS_crop_size)")
        return crop

    def masks_folder(self):
        return mask_folder(self.preprocessed_dataset_folder_base, self.configuration_manager.data_identifier)

    def pretext_loader(self, case_ids, seed: int | None = None, batch_size: int | None = None,
                       sampling_probabilities=None):
        """A MASSPretextDataLoader over `case_ids` of this configuration's data and masks."""
        from nnunet_mass.pretext.dataloader import MASSPretextDataLoader

        dataset = self.dataset_class(self.preprocessed_dataset_folder, list(case_ids))
        return MASSPretextDataLoader(dataset, batch_size or self.batch_size, self.crop_shape(), self.label_manager,
                                     self.masks_folder(), self.pretext_settings(),
                                     sampling_probabilities=sampling_probabilities, seed=seed)

    def get_dataloaders(self):
        from nnunet_mass.pretext.dataloader import require_masks
        from nnunet_mass.unlabeled.pool import source_balanced_probabilities

        train_keys, val_keys = self.do_split()
        require_masks(self.masks_folder(), sorted({*train_keys, *val_keys}), self.plans_manager.dataset_name,
                      self.configuration_name, self.plans_manager.plans_name, self.preprocessed_dataset_folder)
        train = self.pretext_loader(train_keys, sampling_probabilities=source_balanced_probabilities(
            self.dataset_json, list(train_keys)))
        val = self.pretext_loader(val_keys, seed=VALIDATION_SEED)  # the same episodes every epoch
        processes = get_allowed_n_proc_DA()
        return _augmenter(train, processes, self.device), _augmenter(val, processes and max(1, processes // 2),
                                                                    self.device)

    # --- training -----------------------------------------------------------------------------
    def on_train_epoch_start(self):
        self._iteration_in_epoch = 0
        super().on_train_epoch_start()

    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda")

    def _episode_on_device(self, batch: dict) -> dict:
        keys = ("reference", "reference_masks", "query", "query_masks", "valid")
        return {key: batch[key].to(self.device, non_blocking=True) for key in keys}

    def train_step(self, batch: dict) -> dict:
        iteration = self.current_epoch * self.num_iterations_per_epoch + self._iteration_in_epoch
        self._iteration_in_epoch += 1
        self.lr_scheduler.step_iteration(iteration)
        episode = self._episode_on_device(batch)
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            logits = self.network(episode["query"], episode["reference"], episode["reference_masks"].float())
            loss = self.loss(logits, episode["query_masks"], episode["valid"])
        loss.backward()
        # DDP has averaged the gradients, so every rank sees the same norm and stops together.
        grad_norm = clip_grad_norm_(self.network.parameters(), self.grad_clip)
        if not (torch.isfinite(loss) and torch.isfinite(grad_norm)):
            raise NonFiniteLossError(
                f"Non-finite loss ({loss.item()}) or gradient norm ({grad_norm.item()}) at epoch {self.current_epoch}, "
                f"iteration {iteration}. Training stopped before the weights were touched; the last checkpoint "
                f"({os.path.join(self.output_folder, 'checkpoint_latest.pth')}) is intact. Resume with --c, "
                f"perhaps with a lower peak LR (nnUNet_MASS_initial_lr, now {self.initial_lr}).")
        self.optimizer.step()
        update_ema(self.ema, unwrap(self.network))
        return {"loss": loss.detach().cpu().numpy()}

    # --- validation: in-context Dice of the EMA -----------------------------------------------
    def on_validation_epoch_start(self):
        self.ema.module.eval()

    def validation_step(self, batch: dict) -> dict:
        episode = self._episode_on_device(batch)
        with self._autocast():
            logits = self.ema.module(episode["query"], episode["reference"], episode["reference_masks"].float())
            loss = self.loss(logits, episode["query_masks"], episode["valid"])
        return {"loss": loss.detach().cpu().numpy(), "dice": scored_task_dice(logits, episode)}

    def on_validation_epoch_end(self, val_outputs: list):
        losses = [float(o["loss"]) for o in val_outputs]
        dices = np.concatenate([o["dice"] for o in val_outputs]) if val_outputs else np.zeros(0)
        if self.is_ddp:
            losses, dices = _gather(losses), np.concatenate(_gather([dices]))
        mean_dice = float(np.mean(dices)) if dices.size else float("nan")
        self.logger.log("mean_fg_dice", mean_dice, self.current_epoch)
        self.logger.log("dice_per_class_or_region", [mean_dice], self.current_epoch)
        self.logger.log("val_losses", float(np.mean(losses)), self.current_epoch)
        self.print_to_log_file(f"In-context Dice of the EMA on held-out masks: {mean_dice:.4f} "
                               f"({dices.size} tasks)")

    def perform_actual_validation(self, save_probabilities: bool = False):
        from nnunet_mass.training.incontext_eval import write_final_evaluation

        if self.local_rank == 0:
            write_final_evaluation(self)
        if self.is_ddp:
            dist.barrier()

    # --- checkpoints --------------------------------------------------------------------------
    def save_checkpoint(self, filename: str) -> None:
        if self.local_rank != 0:
            return
        if self.disable_checkpointing:
            self.print_to_log_file("No checkpoint written, checkpointing is disabled")
            return
        checkpoint = {
            "network_weights": ema_state_on_cpu(self.ema),
            checkpoints.RAW_WEIGHTS_KEY: unwrap(self.network).state_dict(),
            checkpoints.EMA_UPDATES_KEY: int(self.ema.n_averaged),
            "optimizer_state": self.optimizer.state_dict(),
            "grad_scaler_state": None,
            "logging": self.logger.get_checkpoint(),
            "_best_ema": self._best_ema,
            "current_epoch": self.current_epoch + 1,
            "init_args": self.my_init_kwargs,
            "trainer_name": self.__class__.__name__,
            "inference_allowed_mirroring_axes": self.inference_allowed_mirroring_axes,
            checkpoints.MASS_KEY: self.mass_metadata(),
        }
        checkpoints.save_atomically(checkpoint, filename)

    def mass_metadata(self) -> dict:
        return {"plugin_version": __version__, "pretext": asdict(self.pretext_settings()),
                "crop_size": list(self.crop_shape()), "optimizer": self.optimizer_name,
                "iterations_done": self.current_epoch * self.num_iterations_per_epoch + self._iteration_in_epoch}

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        if not self.was_initialized:
            self.initialize()
        checkpoint = checkpoints.read_checkpoint(filename_or_checkpoint, self.device)
        if checkpoints.RAW_WEIGHTS_KEY not in checkpoint:
            raise ValueError(f"{filename_or_checkpoint} is not a MASS pretraining checkpoint "
                             f"(no '{checkpoints.RAW_WEIGHTS_KEY}'): it cannot resume this training")
        unwrap(self.network).load_state_dict(plain_state(checkpoint[checkpoints.RAW_WEIGHTS_KEY]))
        restore_ema(self.ema, plain_state(checkpoint["network_weights"]), checkpoint[checkpoints.EMA_UPDATES_KEY])
        self.optimizer.load_state_dict(checkpoint["optimizer_state"])
        self.my_init_kwargs = checkpoint["init_args"]
        self.current_epoch = checkpoint["current_epoch"]
        self.logger.load_checkpoint(checkpoint["logging"])
        self._best_ema = checkpoint["_best_ema"]
        self.inference_allowed_mirroring_axes = checkpoint.get("inference_allowed_mirroring_axes")


def _augmenter(loader, processes: int, device: torch.device):
    """nnU-Net's way of running a loader: in the main process (0 processes), or in worker processes."""
    if processes == 0:
        return SingleThreadedAugmenter(loader, None)
    return NonDetMultiThreadedAugmenter(data_loader=loader, transform=None, num_processes=processes,
                                        num_cached=max(6, processes // 2), seeds=None,
                                        pin_memory=device.type == "cuda", wait_time=0.002)


def _gather(values: list) -> list:
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, values)
    return [item for part in gathered for item in part]
