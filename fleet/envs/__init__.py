"""Task-family environments.

Modules here that import pybullet (``reach``) are imported lazily by their families, so that
``import fleet`` stays cheap and quiet (pybullet prints its build time on import).
"""
