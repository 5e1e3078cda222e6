"""`python -m webhyve.cli`: vmmctl, as the installed `vmmctl` script runs it."""
from .vmmctl import main

main()
