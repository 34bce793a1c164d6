"""Training one model: settings, the fit loop, optimisers and schedules, losses, metrics, checkpoints, devices."""
