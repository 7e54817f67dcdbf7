"""fracture_qi.screening"""
