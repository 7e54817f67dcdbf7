"""fracture_qi.store"""
