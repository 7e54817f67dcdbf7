"""fracture_qi.qi"""
