stage=phase1 experiment=cifar10_cpu experiment_name=c10_L2s05_e10_plr1e-2 phase1.levels=2 phase1.shift=0.5 phase1.epochs=10 phase1.lr=0.01
