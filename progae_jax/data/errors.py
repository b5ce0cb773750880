"""Every refusal of `progae_jax.data`: one exception family, each message says what to do."""


class DataError(ValueError):
  """Bad data or a bad request for data: what this package raises (TypeError aside, for an
  unknown keyword option)."""


class UnknownDatasetError(DataError):
  """The name is neither built in, nor a folder, nor a tensorflow-datasets dataset."""


class DatasetNotPreparedError(DataError, FileNotFoundError):
  """A tfds dataset exists but was not prepared in `data_dir` (nothing is downloaded)."""
