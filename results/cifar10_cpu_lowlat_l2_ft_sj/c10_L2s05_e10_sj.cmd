# run folder: ann.pt, ann_stats.pt, qcann.pt from runs/c10_L2s05_e10; snn_T2/T4/T8_lowlat-ft.pt from runs/c10_L2s05_e10_ftn2000, _ftn2000_T4, _ftn2000_T8
python scripts/compare_spikingjelly.py runs/c10_L2s05_e10_sj --images 1024 --out results/cifar10_cpu_lowlat_l2_ft_sj
