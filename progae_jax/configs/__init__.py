"""The presets: one commented config file per preset, each with `get_config()`.

`progae train --preset NAME` reads NAME.py from this folder (it ships with the package), and
`progae train --config progae_jax/configs/main.py` reads the same file by path; copy one
to start a config of your own. Keys are TrainConfig fields (progae_jax/schedule.py); a key
left out keeps TrainConfig's default.
"""
