"""A tiny TFDS text dataset (built-in stories) for testing the TFDS source; built locally, no download."""

import tensorflow_datasets as tfds

from microrwkv_jax.data.stories import generate_stories


class Builder(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({"text": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(40, 0), "validation": self._generate_examples(6, 1)}

    def _generate_examples(self, n, seed):
        texts, _ = generate_stories(n, seed)
        for i, text in enumerate(texts):
            yield i, {"text": text}
