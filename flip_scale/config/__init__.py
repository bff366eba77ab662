from .load import (ConfigError, config_from_dict, config_to_dict, dump_config, load_recipe, parse_override,
                   read_run_config, validate, write_config)
from .site import SITE_ENV, Site, load_site, site_path
from .schema import (CheckpointConfig, Config, DataConfig, EvalConfig, ModelConfig, ParallelConfig,
                     TrainConfig)

__all__ = ["SITE_ENV", "Site", "load_site", "site_path", "ConfigError", "config_from_dict", "config_to_dict",
           "dump_config", "load_recipe", "parse_override", "read_run_config", "validate", "write_config",
           "CheckpointConfig", "Config", "DataConfig", "EvalConfig", "ModelConfig",
           "ParallelConfig", "TrainConfig"]
