"""fracture_qi.outcomes"""
