"""MD4 on FineWeb-Edu (GPT-2 tokens, length 1024).

The OpenWebText model and schedule (configs/md4/openwebtext.py) on
FineWeb-Edu. Variants: `small` (default), `medium`, `cpu`.
Prepare the data first: python prepare_openwebtext_data.py --dataset=fineweb_edu.
"""

from md4 import config_recipes


def get_config(arg=None):
  c = config_recipes.load_file(
      config_recipes.sibling(__file__, "openwebtext.py"), arg
  )
  c.data.dataset = "fineweb_edu"
  return c
