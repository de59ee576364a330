"""Writing a tokenizer directory: its files plus tokenizer.json (the metadata that names the tokenizer kind)."""

import json
import os
import tempfile

META_FILE = 'tokenizer.json'


def write_files(directory: str, files: dict[str, bytes], meta: dict) -> None:
  """Writes each file atomically (temp file, then rename) and the metadata last, so a directory holding
  tokenizer.json is complete even when several processes save the same tokenizer at once."""
  os.makedirs(directory, exist_ok=True)
  for name, data in {**files, META_FILE: json.dumps(meta, indent=1).encode()}.items():
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f'.{name}.')
    with os.fdopen(fd, 'wb') as f:
      f.write(data)
    os.replace(tmp, os.path.join(directory, name))
