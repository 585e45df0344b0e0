"""Settings split by concern: ``base`` (Django core) pulls in ``database``, ``queues`` and ``protocol``;
``dev``, ``test`` and ``production`` choose among them."""
