from django.contrib import admin

from shop.models import Export, Order

admin.site.register(Order)
admin.site.register(Export)
