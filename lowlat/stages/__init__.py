"""Pipeline stages. Each takes the resolved config and the experiment's run folder."""
