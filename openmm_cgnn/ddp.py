"""Data-parallel training on several GPUs or nodes with hippynn's PyTorch Lightning trainer.

:func:`openmm_cgnn.training.train` hands a run here when ``TrainConfig.devices > 1`` or
``num_nodes > 1``. The model, loss, optimiser, ``RaiseBatchSizeOnPlateau`` schedule and
``PatienceController`` are the ones of the single-process run; hippynn's
``HippynnLightningModule`` runs them under Lightning's ``DDPStrategy`` (NCCL on GPUs, gloo on CPUs).

- Each process trains on its own shard of the training frames (Lightning's distributed sampler),
  with ``batch_size`` frames per process and step: the effective batch is ``devices * num_nodes``
  times larger, and the gradients are averaged over the processes.
- Validation metrics are averaged over the processes; every process takes the same decisions
  (batch size, learning rate, early stop) from them.
- The weights of the best validation epoch are restored at the end, as in the single-process run.

Launch: with ``strategy="ddp"`` Lightning starts the other processes of a node itself by running
the same command again (``openmm-cgnn train ... --devices 4``); on a cluster, start one task per GPU
with the scheduler (e.g. ``srun``) or ``torchrun`` and Lightning joins them. Only the process of
global rank 0 writes the model directory. Needs the optional ``pytorch-lightning`` package
(``pip install openmm-cgnn[lightning]``).
"""

from __future__ import annotations

import copy
from typing import Any, Callable

import torch

from .errors import CGNNError


def _import_lightning():
    try:
        import pytorch_lightning as pl
    except ImportError as exc:  # optional dependency
        raise CGNNError("training on several devices or nodes needs PyTorch Lightning: "
                        "pip install 'pytorch-lightning==2.6.6' (the 'lightning' extra)") from exc
    return pl


def fit_ddp(config, training_modules, database, controller, metric_tracker,
            on_epoch: Callable[[int, bool], None], device: torch.device, workdir: str) -> int:
    """Train with hippynn's Lightning module under DDP; restore the best weights into
    ``training_modules.model``. Returns this process's global rank (only rank 0 should write files).

    :param config: the :class:`~openmm_cgnn.training.TrainConfig` (``devices``, ``num_nodes``, ``max_epochs``).
    :param on_epoch: called as ``on_epoch(epoch, better)`` after each epoch's validation, on rank 0 only.
    :param device: ``cuda`` to train on GPUs (one per process), ``cpu`` for CPU processes.
    """
    pl = _import_lightning()
    from hippynn.experiment.lightning_trainer import HippynnLightningModule
    from pytorch_lightning.strategies import DDPStrategy

    module, datamodule = HippynnLightningModule.from_train_setup(training_modules, database, controller,
                                                                 metric_tracker)
    model = training_modules.model

    class EpochEnd(pl.Callback):
        """Keep the best weights and report each epoch (after the module has registered its metrics)."""

        def __init__(self):
            self.best_loss = float("inf")
            self.best_state: dict[str, Any] | None = None

        def on_train_epoch_end(self, trainer, pl_module):
            values = metric_tracker.epoch_metric_values
            if not values or "valid" not in values[-1]:
                return
            loss = float(values[-1]["valid"][controller.stopping_key])
            better = loss < self.best_loss
            if better:
                self.best_loss = loss
                self.best_state = {k: v.detach().cpu().clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v)
                                   for k, v in model.state_dict().items()}
            if trainer.is_global_zero:
                on_epoch(trainer.current_epoch, better)

    epoch_end = EpochEnd()
    accelerator = "gpu" if device.type == "cuda" else "cpu"
    trainer = pl.Trainer(
        accelerator=accelerator, devices=config.devices, num_nodes=config.num_nodes,
        # the energy offsets get no gradient from a force loss: DDP must expect unused parameters
        strategy=DDPStrategy(process_group_backend="nccl" if accelerator == "gpu" else "gloo",
                             find_unused_parameters=True),
        max_epochs=config.max_epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=workdir, callbacks=[epoch_end],
        deterministic=False,
    )
    trainer.fit(module, datamodule=datamodule)
    if epoch_end.best_state is not None:
        model.load_state_dict(epoch_end.best_state)
    model.to("cpu")
    return int(trainer.global_rank)
