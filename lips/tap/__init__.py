"""
Service makers, one module per role, named by the plugins in C{twisted/plugins}.
"""
