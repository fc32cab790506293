"""The engine: timers per socket (tracker), who holds a socket (owners,
fdscan), when a socket counts and against whom (evidence, counting), which
settings judge a process (config, rules), when a process crossed its limit
and who may be reaped (policy, filters), how a process is killed (killer)
and its service brought back (revival), the loops that tie them (watch,
trace), what top shows of them (view, churn), and what they decide, said
through decisions.  Imports sources, host facts and the shared base; never
ops or the CLI."""
