"""linkmond: watches the kernel's network state over rtnetlink and reports every meaningful
change (carrier lost, link admin-down, address/route/neighbour/rule/sysctl changes) as
structured events to the journal, JSON-lines files and webhooks."""

__version__ = "0.1.0"
