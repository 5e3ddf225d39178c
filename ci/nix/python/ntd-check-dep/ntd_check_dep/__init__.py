"""A dependency of ntd_check_extra: reaches a test script only through propagation."""


def base() -> int:
    return 40
