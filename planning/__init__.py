"""Planning from measurements: how many replicas a request rate needs (`planning.capacity`)."""
