"""Tuning campaigns on Ray Tune: a search space over the config, trials that are Ray Train runs, resumable."""

from unet_dist.tune.campaign import CampaignSummary, run_campaign

__all__ = ["run_campaign", "CampaignSummary"]
