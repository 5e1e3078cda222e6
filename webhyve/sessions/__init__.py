"""The VMs a front end runs and what follows them (fleet.py): the output pump (pump.py) into the server terminal
(terminal.py) and recordings (recording.py), screenshots (screenshot.py), and ApiError (errors.py)."""
