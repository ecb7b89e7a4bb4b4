"""The results collector: leaderboard, export (model hub), retention (gc), report and predict.

Reads storage through :mod:`unet_dist.runs` and :mod:`unet_dist.storage` only; needs no Ray cluster (except
``predict --ray``) and never loads a checkpoint to rank a run. Import the submodules directly.
"""
