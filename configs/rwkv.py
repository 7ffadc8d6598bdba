"""Pure RWKV x051a (TimeMix + ChannelMix, as nanoRWKV) on the built-in stories, tiny size."""

from configs.tiny import base_config


def get_config():
    c = base_config()
    c.model.family = "rwkv"
    return c
