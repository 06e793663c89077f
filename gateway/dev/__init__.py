"""Development tools, apart from the runtime: the local Kafka launcher, the sandbox federation
and the demo. A production node never imports them."""
