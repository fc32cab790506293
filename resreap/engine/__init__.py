"""The engine: timers per socket (tracker), who holds a socket (owners,
fdscan), when a socket counts (evidence), who may be reaped (policy,
filters), how a process is killed (killer), and the loops that tie them
(watch, trace), which say what they decide through decisions.  Imports
sources, host facts and the shared base; never ops or the CLI."""
