"""The append-only audit log of every human action: sealed with HMAC-SHA256, chained, anchored on Kafka.

`chain` is the pure core (seal, verify), `log` the Redis list, `anchor` the Kafka `audit` topic,
`secret` where the key comes from, `query` the filters of `monitor audit list`. See docs/audit.md.
"""

from monitor.audit.chain import GENESIS, Verification, verify_chain
from monitor.audit.log import Anchor, AuditLog

__all__ = ["GENESIS", "Anchor", "AuditLog", "Verification", "verify_chain"]
