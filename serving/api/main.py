"""All routes of the API, in the order they were always registered."""

from __future__ import annotations

from fastapi import APIRouter

from routerops.serving.api.routes import admin, chat, feedback, health, models

api_router = APIRouter()
api_router.include_router(chat.router)
api_router.include_router(models.router)
api_router.include_router(health.router)
api_router.include_router(feedback.router)
api_router.include_router(admin.router)
