"""One trial of a campaign: the base config with the sampled values, trained by the same Ray Train path as
``unet-dist train`` (``build_trainer``), reporting every epoch to Tune through Ray Train's Tune callback.

The trial's run directory (``campaign/trials/<trial_id>/``) is an ordinary run directory plus the searched values,
so checkpoints, resume and metrics are those of a single run; a restored trial resumes from its newest complete
checkpoint because its Ray Train run keeps the same name and folder.
"""

from __future__ import annotations

from typing import Any

from unet_dist.config import Config
from unet_dist.errors import ConfigError, UserError
from unet_dist.runs import CampaignDir, finish_record, new_trial_record, start_record
from unet_dist.storage import resolve
from unet_dist.tune.space import apply_params, flat_params


class TrialFailed(UserError):
    """A trial's training failed after its retries; the campaign goes on, the trial is recorded ``error``."""


def trial_main(config: dict[str, Any], *, base: Config, campaign_uri: str, manifest: dict[str, Any], gpu: Any,
               datasets: dict[str, Any], recorders: list[Any]) -> None:
    """Tune's function trainable: validate the point, train it, close its record. ``recorders``: the driver's
    worker recorder specs (:func:`~unet_dist.train.default_recorders`), handed on to the trial's workers."""
    import ray.train
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from unet_dist.session import quiet_ray_logs
    from unet_dist.train import build_trainer, dataset_ref, failure_cause, prepare_data

    quiet_ray_logs()
    trial_id = ray.tune.get_context().get_trial_id()
    campaign = CampaignDir(resolve(campaign_uri, base.storage))
    run = campaign.trial(trial_id)
    params = flat_params(config)
    dataset = dataset_ref(manifest)
    try:
        cfg = apply_params(base, params)
    except ConfigError as err:
        record = new_trial_record(base, run, campaign.loc.name, trial_id, params, dataset)
        run.write_record({**record, "status": "invalid", "error": str(err), "epochs_planned": 0})
        return
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"name": trial_id})})
    start_record(run, new_trial_record(cfg, run, campaign.loc.name, trial_id, params, dataset, use_gpu=gpu.use_gpu,
                                       gpu_reason=gpu.reason))
    data = prepare_data(cfg, manifest, datasets=datasets)
    trainer = build_trainer(cfg, run.loc, callbacks=[TuneReportCallback()], recorders=recorders, datasets=data, gpu=gpu)
    try:
        result = trainer.fit()
        error = result.error
    except ray.train.TrainingFailedError as err:
        error = err
    if error is not None:
        cause = failure_cause(error)
        finish_record(run, "error", cause)
        raise TrialFailed(f"trial {trial_id} failed: {cause}")
    finish_record(run, "finished")
