"""fracture_qi.cli"""
