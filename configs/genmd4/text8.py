"""GenMD4 on text8: per-character learnable polynomial schedules.

Same data and transformer as configs/md4/text8.py; the schedule exponents
start at power_init = 1 (the linear schedule) and are learned with the
leave-one-out REINFORCE gradient. Variants: `small`, `cpu`, `tiny`.
"""

import importlib.util
import os

_MD4 = os.path.join(os.path.dirname(__file__), "..", "md4", "text8.py")


def get_config(arg=None):
  spec = importlib.util.spec_from_file_location("md4_text8", _MD4)
  base = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(base)
  c = base.get_config(arg)
  c.model.process = "genmd4"
  c.model.power_init = 1.0
  c.model.t1 = 1e-4
  return c
