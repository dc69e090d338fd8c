"""The known checkpoints' configs now live in planner.known_configs (the planner may not import lowvram);
this name stays for lowvram.bench, which imports them from here."""

from planner.known_configs import *
