stage=phase2 experiment=quickstart experiment_name=qs_ft_eq15 phase2.methods=[lowlat-ft] eval.methods=[lowlat-ft] phase2.timesteps=[2,4] phase2.finetune.surrogate=eq15
