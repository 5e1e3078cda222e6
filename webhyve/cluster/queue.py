"""Flask-SocketIO's Redis message queue, made to outlive Redis: a node's own consoles never wait for it.

python-socketio's RedisManager delivers every emit to this node's own clients first and then publishes it for the
other nodes. While Redis is away its publish tries twice per emit (each try a connect that can block for the TCP
timeout when the host does not answer) and logs twice; its listener backs off up to 60 s between tries, so the
consoles of other nodes' VMs stayed dark for up to a minute after Redis came back. Here connecting gives up after
CONNECT_TIMEOUT, a failed publish silences publishing for QUIET seconds (the local delivery has already happened),
the listener tries again every RETRY seconds, and each outage is logged once.
"""
import logging
import time

from socketio import RedisManager

CONNECT_TIMEOUT = 1.0
QUIET = 1.0
RETRY = 1.0

log = logging.getLogger("webhyve.cluster")


class ClusterQueue(RedisManager):
    """Legend: `_quiet_until` and `_publish_failing` belong to the emitting threads (a race costs one extra try)."""

    def __init__(self, url, channel):
        super().__init__(url, channel=channel,
                         redis_options={"socket_connect_timeout": CONNECT_TIMEOUT, "socket_keepalive": True})
        self._quiet_until = 0.0
        self._publish_failing = False

    def _publish(self, data):
        if time.monotonic() < self._quiet_until:
            return None
        try:
            if not self.connected:
                self._redis_connect()
            answer = self.redis.publish(self.channel, self.json.dumps(data))
        except Exception as problem:
            self.connected = False
            self._quiet_until = time.monotonic() + QUIET
            if not self._publish_failing:
                log.warning("webhyve cluster: the message queue cannot publish (%s): other nodes' browsers miss this "
                            "node's console output until Redis answers", problem)
            self._publish_failing = True
            return None
        if self._publish_failing:
            log.warning("webhyve cluster: the message queue publishes again")
            self._publish_failing = False
        return answer

    def _redis_listen_with_retries(self):
        failing = False
        while True:
            try:
                self._redis_connect()
                self.pubsub.subscribe(self.channel)
                if failing:
                    log.warning("webhyve cluster: the message queue receives again")
                    failing = False
                yield from self.pubsub.listen()
            except Exception as problem:
                if not failing:
                    log.warning("webhyve cluster: the message queue cannot receive (%s): retrying every %.0f s",
                                problem, RETRY)
                failing = True
                time.sleep(RETRY)
