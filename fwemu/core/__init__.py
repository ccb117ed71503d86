"""The sans-IO core. Compiled with mypyc at install time where a compiler was there (setup.py);
its compiled modules run only while they match these sources (fwemu.core.compiled)."""

from fwemu.core import compiled

compiled.choose()
