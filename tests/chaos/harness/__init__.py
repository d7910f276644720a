"""What the chaos scenarios share: an isolated stack (``env``), a load driver that plays
WeChat Pay (``driver``), control of the broker and of MariaDB (``broker``, ``mariadb``),
the state read back with retries and quiescence (``state``), what the services report
(``metrics``), the exactly-once invariant (``invariants``) and a scenario put together
from these (``scenario``)."""
