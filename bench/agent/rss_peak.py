"""Peak resident memory of a process tree, sampled from /proc every 20 ms.

usage: rss_peak.py PID  -- prints the peak in MB (sum of VmRSS over PID and
all its descendants) when PID exits. Summing counts pages shared between
prefork children once per child, as `ps` and the kernel's per-process RSS do.
"""
import os
import sys
import time


def children_map():
    kids = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def rss_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss_kb(root):
    kids = children_map()
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss_kb(pid)
        stack.extend(kids.get(pid, []))
    return total


def main():
    root = int(sys.argv[1])
    peak = 0
    while os.path.exists(f"/proc/{root}"):
        peak = max(peak, tree_rss_kb(root))
        time.sleep(0.02)
    print(f"{peak / 1024:.1f}")


if __name__ == "__main__":
    main()
