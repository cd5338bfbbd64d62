"""``python -m mmlab.study.worker PAYLOAD``: one worker process of ``mmlab search --workers N``.

Started by :func:`mmlab.study.search.spawn_workers`; see :func:`mmlab.study.search.worker_main`.
"""

import sys

from mmlab.study.search import worker_main

if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
