"""What both peer scripts share. They run as plain scripts, possibly under another Python that
lacks phi4mm_edge, so this sits beside them (a script's folder is first on sys.path)."""


def peak_rss_mb() -> float:
    """This process's own peak RSS. Not ru_maxrss: Linux carries it over from the parent across
    fork and exec, so a peer started by a 16 GB bench would report 16 GB."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:  # not Linux
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
